"""A hosted feed: this server stores the files itself and accepts uploads to them.

``storage`` keeps bytes and records, ``auth`` says who may publish what, ``upload`` checks an
upload, ``prune`` plans what retention deletes, ``feed`` ties them into the feed service and
``upstream`` lists the feed in the merged index like any other upstream.
"""
