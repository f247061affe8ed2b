//! hugepage binary (being written).
fn main() {}
