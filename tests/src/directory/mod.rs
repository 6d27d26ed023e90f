//! Directory servers for the routing-map tests, each a lab process with its own data under
//! the lab's log folder: OpenLDAP's slapd ([`ldap`]), PostgreSQL, MariaDB and SQLite files
//! ([`sql`]), FreeRADIUS ([`radius`]).

pub mod ldap;
pub mod radius;
pub mod sql;
