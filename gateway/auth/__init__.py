"""Authorization of idTags: token store, decision logic, eMSP online requests, card readers."""
