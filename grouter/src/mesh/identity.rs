//! placeholder: written by the identity work
