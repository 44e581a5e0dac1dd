//! SemVer 2.0.0 versions (SPEC §5.2) and their precedence (SPEC §6.5).
