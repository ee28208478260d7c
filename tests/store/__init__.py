"""The stores, on a local folder and on SeaweedFS, and hostile stores."""
