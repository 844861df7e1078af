//! Fault matrix (issue 18): Elasticsearch misbehaving under a random
//! workload (429 storms, read-only blocks, the index deleted by hand, a
//! document over the request limit, the node restarted).
