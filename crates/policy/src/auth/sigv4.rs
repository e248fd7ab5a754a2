//! AWS Signature Version 4 verification: recompute the signature from the stored secret and
//! compare, so any AWS SDK or aws-sigv4 signer works unchanged.
