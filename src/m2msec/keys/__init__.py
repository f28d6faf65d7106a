"""Key material and PSK lookup tables (pure: no sockets; the SQLite store is the one I/O module)."""
