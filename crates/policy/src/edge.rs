//! Edge rules, evaluated before authentication so attacks cost little: CIDR allow and deny
//! lists and per-client-IP rate rules that block an address for a period.
