"""SNMP polling machinery: async client, counter arithmetic and data-file profiles."""
