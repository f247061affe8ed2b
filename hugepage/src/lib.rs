//! The huge-page assembler (being written).
