//! The lab's ldap directory.
