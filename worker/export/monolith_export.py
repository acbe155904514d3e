"""`@monolith_export`: marks a class or function as part of the public export API (a no-op tag)."""


def monolith_export(obj):
    obj.__monolith_doc = None
    return obj
