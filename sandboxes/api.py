"""API routes of the sandboxes app: images (list, one, its build log). Mounted by config/api.py."""

from ninja import Router

from core.schemas import errors_for
from sandboxes.images.schemas import ImageListOut, ImageLogOut, ImageOut
from sandboxes.images.selectors import image_get, image_log_tail, image_require_view, images_list

router = Router(tags=["images"])


@router.get("", response=ImageListOut)
def images_index(request):
    """Every image, most recently used first."""
    image_require_view(user=request.auth)
    return {"items": list(images_list())}


@router.get("/{key}", response={200: ImageOut, **errors_for(403, 404)})
def image_detail(request, key: str):
    """One image, by its key or a unique prefix of at least 6 characters."""
    image_require_view(user=request.auth)
    return image_get(key=key)


@router.get("/{key}/log", response={200: ImageLogOut, **errors_for(403, 404)})
def image_log(request, key: str):
    """The end of the image's latest build log."""
    image_require_view(user=request.auth)
    image = image_get(key=key)
    return {"key": image.key, "state": image.state, "text": image_log_tail(image=image)}


ROUTERS = [("/images", router)]
