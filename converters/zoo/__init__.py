"""The producer side of the zoo: regenerate entries from upstream files, verify, publish; a Hub stand-in."""
