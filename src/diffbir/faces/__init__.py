"""Faces in whole photos: detect with five landmarks, align to FFHQ, paste back.

Images here are numpy HWC float32 RGB in [0, 1]; use
:func:`image_to_tensor` / :func:`tensor_to_image` to reach the models' NCHW
tensors. Typical use::

    faces = select_faces(detector.detect(image), max_faces=4, min_size=32)
    for face in faces:
        crop, affine = align_face(image, face.landmarks)
        restored = restore(crop)                      # any 512x512 face model
        background = paste_face(background, restored, affine, upscale=upscale)
"""

from diffbir.faces.align import FFHQ_TEMPLATE_512, align_face, estimate_similarity, face_template
from diffbir.faces.arrays import image_to_tensor, tensor_to_image
from diffbir.faces.detect import Face, FaceDetector, YuNetDetector, select_faces
from diffbir.faces.paste import face_alpha, paste_face, upscale_affine
from diffbir.faces.warp import invert_affine
from diffbir.faces.whole import RestoredFace, WholePhotoResult, restore_faces_in_photo

__all__ = [
    "FFHQ_TEMPLATE_512",
    "Face",
    "FaceDetector",
    "RestoredFace",
    "WholePhotoResult",
    "YuNetDetector",
    "align_face",
    "estimate_similarity",
    "face_alpha",
    "face_template",
    "image_to_tensor",
    "invert_affine",
    "paste_face",
    "restore_faces_in_photo",
    "select_faces",
    "tensor_to_image",
    "upscale_affine",
]
