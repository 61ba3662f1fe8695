//! Throwaway PostgreSQL clusters for the demo and the tests (in progress).
