//! Lighthouse: the export agent turns local ServiceExports into ServiceImport
//! records; the DNS server answers `clusterset.local` from the imports of
//! every cluster whose tunnel is up.
