# Known-answer vector for the stream-s3 SigV4 unit test, computed by botocore the way
# moto's server verifies a request (canonical_request / string_to_sign / signature).
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
creds = Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "TOKEN/abc=")
headers = {
    "host": "127.0.0.1:5000",
    "x-amz-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "x-amz-date": "20231114T221320Z",
    "x-amz-security-token": "TOKEN/abc=",
}
req = AWSRequest(method="HEAD", url="http://127.0.0.1:5000/my-bucket/dir/a%20b%2Bc.qcow2?a=%2F&versionId=3", headers=headers)
req.context["timestamp"] = headers["x-amz-date"]
auth = S3SigV4Auth(creds, "s3", "us-east-1")
cr = auth.canonical_request(req)
sts = auth.string_to_sign(req, cr)
sig = auth.signature(sts, req)
scope = "20231114/us-east-1/s3/aws4_request"
print(f"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/{scope}, "
      f"SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature={sig}")
