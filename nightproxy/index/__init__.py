"""The merged index: upstream pages merged, retained, dated and rendered as views."""
