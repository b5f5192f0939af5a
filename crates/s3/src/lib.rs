//! Placeholder: the adapter lands with its issue.
