"""The simulated field hospital on one machine: real servers, namespaces, impaired links."""
