"""COCO box evaluation with pycocotools (the official COCOeval)."""

import contextlib
import io

import numpy as np

# COCOeval.stats[0:6], in its order.
METRICS = ("AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L")


def ground_truth(records, categories):
    """A COCO ground-truth dict of `ImageRecord`s (boxes xyxy in pixels)."""
    images, annotations = [], []
    for record in records:
        images.append(dict(id=int(record.id), height=int(record.height), width=int(record.width)))
        for box, category, crowd, area in zip(
            record.boxes, record.category_ids, record.iscrowd, record.areas
        ):
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=int(record.id),
                    category_id=int(category),
                    bbox=[x0, y0, x1 - x0, y1 - y0],
                    area=float(area),
                    iscrowd=int(crowd),
                )
            )
    return dict(
        images=images,
        annotations=annotations,
        categories=[dict(id=int(c.id), name=c.name) for c in categories],
    )


def detections_of(image_id, boxes, scores, category_ids):
    """COCO result entries of one image's detections (boxes xyxy, pixels)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return [
        dict(
            image_id=int(image_id),
            category_id=int(category),
            bbox=[x0, y0, x1 - x0, y1 - y0],
            score=float(score),
        )
        for (x0, y0, x1, y1), score, category in zip(boxes.tolist(), scores, category_ids)
    ]


def evaluate_boxes(ground_truth_dict, detections):
    """Box AP of `detections` (COCO result entries) against the ground truth.

    Returns:
        {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"} as fractions in [0, 1];
        NaN where the ground truth has no object of that size.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints
        truth = COCO()
        truth.dataset = ground_truth_dict
        truth.createIndex()
        if detections:
            results = truth.loadRes(list(detections))
        else:  # loadRes refuses an empty list; COCOeval takes an empty set
            results = COCO()
            results.dataset = dict(
                images=ground_truth_dict["images"],
                categories=ground_truth_dict["categories"],
                annotations=[],
            )
            results.createIndex()
        evaluation = COCOeval(truth, results, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {
        name: float("nan") if value < 0 else float(value)
        for name, value in zip(METRICS, evaluation.stats[:6])
    }
