"""Query/Retrieve matching (PS3.4 C.2.2.2) turned into index queries."""
