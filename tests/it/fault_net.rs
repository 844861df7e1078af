//! Fault matrix (issue 18): TCP faults between Sluice and Elasticsearch and
//! between Sluice and PostgreSQL, through the test proxy, under a random
//! workload; each case ends with the index equal to the table.
