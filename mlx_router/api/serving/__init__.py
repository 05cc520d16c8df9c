"""Services behind the endpoints: wire requests in, wire responses out."""
