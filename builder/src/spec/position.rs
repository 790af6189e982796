//! PLACEHOLDER (helper A replaces this file)
