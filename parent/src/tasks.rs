//! The parent's long-running tasks that work on the shared [`crate::app::App`]:
//! each loops until shutdown, reads the registry through the domain modules
//! below it (functions over a transaction and plain data) and sends what
//! they return. Nothing below `App` calls up into a task.

pub mod cluster;
pub mod owed;
pub mod presence;
pub mod rotation;
