-- The cover image of a track, relative to MEDIA_ROOT, written by the web backend when the
-- track's owner uploads it (NULL: none). It is the only source the thumbnail job accepts
-- for the track (POST /v1/tracks/{id}/thumbnails refuses any other path, and a job whose
-- source is no longer the cover records nothing), and the cover file the erasure deletes
-- with the track: never `thumbnail_source`, which rows of older releases may have set to
-- a file of someone else's.
ALTER TABLE tracks ADD COLUMN cover_path TEXT;
