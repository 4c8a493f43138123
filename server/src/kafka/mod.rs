//! The Kafka wire protocol side: listener, connections, one handler per API, error mapping.
//!
//! Any core accepts connections; a connection lives on the core that accepted it and routes
//! each partition of a request to the partition's owner core over the mesh.

pub mod connection;
pub mod errors;
pub mod handlers;
pub mod listener;
