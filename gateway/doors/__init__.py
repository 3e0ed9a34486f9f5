"""Protocol doors: each turns its wire format into the native schema and back."""
