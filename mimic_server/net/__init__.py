"""The network layer (PS3.8 over PS3.15 TLS): contexts, the association server, identity."""
