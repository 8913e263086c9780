//! Labelled synthetic traffic (being written).
