//! Status lines: one `==>` line per step, indented details below it, all on standard error.

/// Announces a step.
pub fn step(message: &str) {
    eprintln!("==> {message}");
}

/// Adds a detail to the current step.
pub fn info(message: &str) {
    eprintln!("    {message}");
}

/// Reports something that went wrong but does not stop the task.
pub fn warn(message: &str) {
    eprintln!("warning: {message}");
}

/// Reports the error that stops the task.
pub fn error(message: &str) {
    eprintln!("error: {message}");
}
