//! `doctor HOST:PORT`: what is wrong with a TLS endpoint, in plain words.
