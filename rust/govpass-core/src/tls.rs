//! TLS ClientHello detection and SNI location (being written).
