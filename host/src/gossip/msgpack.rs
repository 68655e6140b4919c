//! The go-msgpack 0.5 dialect of memberlist and Serf gossip (reference section 1).
