from dicom_node.admin.cli import app

if __name__ == "__main__":
    app(prog_name="ldct-node")
