from dicom_node.cli import app

app(prog_name="ldct-node")
