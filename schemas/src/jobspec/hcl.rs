//! HCL front-end (in progress).
