"""Code the API and the workers share: settings, the record and its status machine, the store."""
