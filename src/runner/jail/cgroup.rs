//! Per-job cgroups (placeholder: filled in by the cgroup work).
