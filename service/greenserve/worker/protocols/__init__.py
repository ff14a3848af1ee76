"""Wire protocols a worker can speak; each turns an accepted socket into calls to the app."""
