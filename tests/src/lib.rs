//! Test support: starts the real parts (registry, proxy, clients) the integration suites use.
