//! Export for manual installation (mPOS, or any chosen child).
