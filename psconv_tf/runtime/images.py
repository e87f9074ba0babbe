"""Which files are images: those `tf.io.decode_image` decodes (JPEG, PNG, BMP, GIF).

Every reader of image folders (training's class folders, export's
calibration images) lists files with `is_image_file`, so a format read by
one is read by all.

>>> is_image_file("cat.JPEG"), is_image_file("notes.txt")
(True, False)
"""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def is_image_file(name):
    """Whether a file name ends with an image extension (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)
