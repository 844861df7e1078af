//! The operator endpoint: `/metrics`, `/health`, `/ready`.
