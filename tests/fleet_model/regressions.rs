//! Regression cases the fleet check found, shrunk by hand.
