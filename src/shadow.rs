//! Shadow traffic: a copy of a request sent to the side the split did not choose, in the
//! background, and the two answers compared (`compare`), so a new side is proven on real
//! traffic before it answers anyone.

pub mod compare;
