//! Fault matrix (issue 18): PostgreSQL faults under a random workload
//! (walsender terminated, publication altered or dropped by hand, columns
//! added, dropped or retyped with a backlog pending) and SIGKILLs of Sluice at
//! its most delicate moments.
