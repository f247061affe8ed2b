//! Why a plot failed, by step: [`PlotError`]; [`RenderError`] and [`DrawError`] for drawing.

use std::path::PathBuf;

use crate::trace::ReadTraceError;

/// Why `fault-client plot` failed, by step.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The output's extension is neither `.svg` nor `.png`.
    #[error("cannot tell the picture format of {path}: the file name must end in .svg or .png")]
    Format {
        /// The output file.
        path: PathBuf,
    },
    /// The trace cannot be read, or a line of it is not a trace line.
    #[error(transparent)]
    ReadTrace(#[from] ReadTraceError),
    /// A `resolved` or `arrival` event has no resolution.
    #[error("{path}: a {event} event without a resolution")]
    NoResolution {
        /// The trace.
        path: PathBuf,
        /// The event's name.
        event: &'static str,
    },
    /// The embedded font cannot be loaded.
    #[error("the embedded DejaVu Sans font could not be loaded")]
    Font,
    /// Drawing or encoding the picture failed.
    #[error("drawing {path}: {source}")]
    Render {
        /// The output file.
        path: PathBuf,
        /// What failed.
        source: RenderError,
    },
    /// The picture cannot be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What plotters reports when drawing fails (its error type depends on the backend).
pub type DrawError = Box<dyn std::error::Error + Send + Sync>;

/// The result of a drawing step.
pub(super) type DrawResult<T> = Result<T, DrawError>;

/// Why the picture could not be made ([`PlotError::Render`]).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// plotters failed to draw.
    #[error("{0}")]
    Draw(DrawError),
    /// The PNG encoder failed.
    #[error("encoding the PNG: {0}")]
    EncodePng(png::EncodingError),
}

impl From<DrawError> for RenderError {
    fn from(err: DrawError) -> RenderError {
        RenderError::Draw(err)
    }
}
