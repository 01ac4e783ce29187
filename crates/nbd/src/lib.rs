//! NBD wire protocol: server and client.
