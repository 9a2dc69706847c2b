//! rbee queen: discovers hives and holds the live fleet view (being built).
