"""``weakseg annotate IMAGES --classes classes.txt --out LABELS [--ckpt CKPT]``: the annotation page."""

from __future__ import annotations

import argparse
import ipaddress
import sys


def cmd_annotate(args: argparse.Namespace) -> int:
    from weakseg.annotate.server import create_app, new_token, serve
    from weakseg.annotate.store import open_store

    store, left_out = open_store(args.images, args.out, args.classes, ext=args.ext, list_file=args.list)
    for line in left_out[:5]:
        print(f"  left out: {line}", file=sys.stderr)
    if len(left_out) > 5:
        print(f"  ... and {len(left_out) - 5} more left out", file=sys.stderr)
    overlay = None
    if args.ckpt:
        from weakseg.annotate.overlay import ModelOverlay

        overlay = ModelOverlay(args.ckpt, store.meta, device=args.device)
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not loopback:
        print(f"warning: serving on {args.host}: anyone who can reach it and learns the URL can edit {store.out}",
              file=sys.stderr)
    token = new_token()
    try:
        server = serve(create_app(store, token, overlay), args.host, args.port)
    except OSError as exc:
        print(f"weakseg annotate: error: cannot listen on {args.host}:{args.port} ({exc}); try --port 0 (any free "
              f"port)", file=sys.stderr)
        return 2
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{server.port}/?token={token}"
    p = store.progress()
    print(f"{p['annotated']} / {p['total']} images annotated ({p['skipped']} skipped); labels: {store.out}")
    print(f"train on them:  {store.train_command()}")
    print(f"annotate at:    {url}   (Ctrl+C stops)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    p = store.progress()
    print(f"stopped: {p['annotated']} / {p['total']} annotated, saved in {store.out}")
    return 0


def add_annotate_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``annotate`` to the top-level sub-commands."""
    p = subparsers.add_parser("annotate", help="draw scribbles and tick tags on your images in a browser",
                              description="Draw scribbles and tick image-level tags on a folder of images in "
                                          "a browser page; saved where weakseg train reads them.")
    p.add_argument("images", help="folder of images (not recursive); they are read, never copied or changed")
    p.add_argument("--classes", help="class names, one per line, background first (optional when "
                                     "LABELS/classes.txt exists)")
    p.add_argument("--out", required=True, metavar="LABELS",
                   help="output folder: Scribbles/, tags.json, ImageSets/Segmentation/*.txt, classes.txt")
    p.add_argument("--ckpt", help="checkpoint whose prediction and uncertainty are overlaid on the images")
    p.add_argument("--device", help="device for --ckpt: cpu | cuda[:N] | auto (default: the checkpoint's)")
    p.add_argument("--list", help="annotate only these ids (e.g. a train split, so validation images stay unseen)")
    p.add_argument("--ext", help="image suffix when the folder mixes several (training reads one: data.image_ext)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=cmd_annotate)
